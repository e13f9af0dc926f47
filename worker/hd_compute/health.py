"""`python -m hd_compute.health`: one health check of this machine, for container and Kubernetes probes.

Prints the HealthChecker JSON on stdout and exits 0 when healthy or degraded, 1 when unhealthy (or when the
HDC_HEALTH_* settings are invalid; the reason goes to stderr). Settings, all optional:

    HDC_HEALTH_CUDA_MEMORY_MB   least free GPU memory, MB (1000)
    HDC_HEALTH_MEMORY_PERCENT   memory use that counts as high, % (90)
    HDC_HEALTH_DISK_PERCENT     disk use that counts as high, % (85)
    HDC_HEALTH_DISK_PATH        file system to check ("/")
    HDC_HEALTH_REQUIRE_CUDA     true on GPU workers: no usable CUDA device is then unhealthy
                                (unset: true when HDC_DEVICE is cuda or cuda:N, else false)
"""

from __future__ import annotations

import json
import sys

from hd_compute.monitoring.health import HealthChecker, http_status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args:
        print(f"hd_compute.health takes no arguments (settings come from HDC_HEALTH_*), got {args}", file=sys.stderr)
        return 1
    try:
        checker = HealthChecker.from_env()
    except ValueError as exc:
        print(f"invalid health settings: {exc}", file=sys.stderr)
        return 1
    result = checker.check_all()
    print(json.dumps(result))
    return 0 if http_status(result) == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
