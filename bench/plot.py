"""Wall time and server CPU per token against K, ours and the reference's, as one PNG.

    python -m bench.plot                       # runs bench.run for K = 50, 100, 200, 500
    python -m bench.plot --ks 50,200 --tokens 100
    python -m bench.plot --from bench/results/sweep-k*.json   # only draws

Each K is a separate `bench.run` (fresh servers), its figures kept as JSON beside the PNG in
bench/results/; the PNG is also copied to docs/bench.png for the README.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402

from bench.processes import ROOT, run_python  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def sweep(ks: list[int], tokens: int, rate: float, idle_sockets: int) -> list[Path]:
    """One benchmark run per K; the paths of their JSON figures."""
    paths = []
    for k in ks:
        path = RESULTS / f"sweep-k{k}.json"
        argv = ["-m", "bench.run", "--k", str(k), "--tokens", str(tokens), "--rate", str(rate)]
        argv += ["--idle-sockets", str(idle_sockets), "--json", str(path)]
        print(f"K={k} ...", flush=True)
        print(run_python(argv, env=None, timeout=1800).stdout)
        paths.append(path)
    return paths


def draw(results: list[dict[str, Any]], output: Path) -> None:
    results = sorted(results, key=lambda r: r["config"]["k"])
    ks = [r["config"]["k"] for r in results]
    figure, (wall, cpu) = plt.subplots(1, 2, figsize=(11, 4.5))

    def series(who: str, key: str) -> list[float]:
        return [r[who][key] if r[who] else float("nan") for r in results]

    wall.plot(ks, series("ours", "wall_s"), "o-", label="ours: all K at once")
    wall.plot(ks, series("reference", "wall_s"), "s-", label="reference: all K at once")
    wall.plot(ks, series("ours", "alone_s"), "k--", label="one chat alone")
    wall.set(xlabel="chats at once (K)", ylabel="wall time (s)", ylim=(0, None))
    wall.set_title("Wall time of K replies sent at the same instant")
    cpu.plot(ks, series("ours", "cpu_per_token_us"), "o-", label="ours")
    cpu.plot(ks, series("reference", "cpu_per_token_us"), "s-", label="reference")
    cpu.set(xlabel="chats at once (K)", ylabel="server CPU per token (µs)", ylim=(0, None))
    cpu.set_title("Server CPU time per token relayed")
    for axes in (wall, cpu):
        axes.set_xticks(ks)
        axes.grid(alpha=0.3)
        axes.legend()
    config, host = results[0]["config"], results[0]["machine"]
    figure.suptitle(
        f"{config['tokens']} tokens per reply at {config['rate']:g} tokens/s; one daphne "
        f"process; {host['cpus']} x {host['cpu_model']}"
    )
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ks", default="50,100,200,500", help="comma-separated K values")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--idle-sockets", type=int, default=0, help="per run (0: skip)")
    parser.add_argument("--from", dest="inputs", type=Path, nargs="+", help="only draw these")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench.png")
    parser.add_argument(
        "--copy-to", default=str(ROOT / "docs" / "bench.png"), help="'' for no copy"
    )
    args = parser.parse_args(argv)
    if args.inputs:
        paths = args.inputs
    else:
        ks = [int(k) for k in args.ks.split(",")]
        paths = sweep(ks, args.tokens, args.rate, args.idle_sockets)
    draw([json.loads(path.read_text()) for path in paths], args.out)
    print(f"wrote {args.out}")
    if args.copy_to:
        Path(args.copy_to).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.out, args.copy_to)
        print(f"copied to {args.copy_to}")


if __name__ == "__main__":
    main()
