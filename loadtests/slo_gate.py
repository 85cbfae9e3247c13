"""The rollout gate: locust, headless, for a bounded time and user count, against a running
gateway; exit status 0 when every SLO in the config holds, 1 when one breaks, 2 when the
system is not up.

    python -m loadtests.slo_gate [--host http://127.0.0.1:8000] [--config loadtests/slo.yaml]
                                 [-o slo.p95_latency_ms=2000 -o load.users=8 ...]

Writes locust's CSV statistics and HTML report and the verdict (``slo_report.json``) to
``--out-dir``. The verdict and the HTML report hold the final statistics; locust rewrites the
CSV once a second, so it may miss the run's last second. ``make loadtest`` runs it against
``make run``'s system.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import httpx

from loadtests.servers import ROOT
from loadtests.slo import DEFAULT_CONFIG, load_config

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def locust_command(host: str, config_file: Path, out_dir: Path, users: int, spawn_rate: float,
                   run_time: str) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host, "--users", str(users), "--spawn-rate", str(spawn_rate),
        "--run-time", run_time,
        # In-flight requests get this long to finish when time is up, so none is cut short
        # (a cut request would count as an error); bounded, so the run always ends.
        "--stop-timeout", "60",
        "--csv", str(out_dir / "locust"), "--html", str(out_dir / "locust.html"),
        "--slo-config", str(config_file), "--slo-report", str(out_dir / "slo_report.json"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("SLM_GATEWAY_URL",
                                                         "http://127.0.0.1:8000"))
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("-o", "--override", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a config value")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "var" / "loadtest")
    args = parser.parse_args()
    try:
        config = load_config(args.config, args.override)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    host = args.host.rstrip("/")
    try:
        ready = httpx.get(f"{host}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        ready = False
    if not ready:
        print(f"error: no ready gateway at {host} (/readyz); start it with `make run`",
              file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    effective = args.out_dir / "slo_config.json"  # what this run checked, overrides included
    effective.write_text(config.model_dump_json(indent=2) + "\n")
    load = config.load
    command = locust_command(host, effective, args.out_dir, load.users, load.spawn_rate,
                             load.run_time)
    print(f"locust: {load.users} users for {load.run_time} against {host}; "
          f"reports in {args.out_dir}", flush=True)
    return subprocess.run(command, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
