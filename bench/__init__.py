"""The benchmark: the project against a naive relay, K chats at once (`python -m bench.run`)."""
