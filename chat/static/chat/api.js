// The JSON API as the page calls it: the session's cookie, its CSRF token on writes, and
// errors turned into words a person can act on.

export class ApiError extends Error {}

export function createApi(csrfToken) {
  return async function call(method, url, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRFToken"] = csrfToken;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
      });
    } catch {
      throw new ApiError("Could not reach the server. Check the connection and try again.");
    }
    if (response.status === 204) return {};
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      throw new ApiError(answer?.error?.detail || `The server said ${response.status}. Try again.`);
    }
    return answer;
  };
}
