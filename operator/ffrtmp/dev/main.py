"""`ffrtmp dev`: the local control plane and stand-in workers."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from ffrtmp import logs
from ffrtmp.dev.cluster import ClusterError, LocalCluster, default_connect_guard
from ffrtmp.egress.guard import LIBRARY_ENV, OFF


def default_root() -> Path:
    return Path(os.environ.get("FFRTMP_DEV_DIR") or Path.cwd() / ".dev" / "cluster")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dev_command", required=True)
    cluster = sub.add_parser("cluster", help="start, stop or show the local control plane")
    cluster.add_argument("action", choices=["up", "down", "env"])
    cluster.add_argument("--dir", type=Path, default=None, help="state folder (default: .dev/cluster)")
    cluster.add_argument("--extra-nodes", type=int, default=0, help="extra simulated CPU nodes")
    cluster.add_argument(
        "--real-node", action="store_true",
        help="also join one real kubelet + containerd node (root; see ffrtmp.dev.node); `down` undoes its host changes",
    )  # fmt: skip
    cluster.add_argument(
        "--no-simulated-nodes", dest="simulated_nodes", action="store_false",
        help="start no KWOK nodes (with --real-node: every Pod runs on the real node)",
    )  # fmt: skip
    cluster.set_defaults(func=_cluster)

    workers = sub.add_parser("workers", help="run stand-in worker processes for the worker Pods")
    workers.add_argument("--namespace", required=True)
    workers.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    workers.add_argument("--worker-kubeconfig", default=None, help="credentials of the workers (default: --kubeconfig)")
    workers.add_argument("--state-dir", type=Path, required=True, help="logs and workers.json go here")
    workers.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra worker env")
    workers.add_argument("--restart-delay", type=float, default=5.0)
    workers.add_argument(
        "--pod-bound-tokens", action="store_true",
        help="give each worker a token of its Pod's ServiceAccount bound to the Pod, as the kubelet does "
        "(server and CA from --worker-kubeconfig); needs the right to create serviceaccounts/token",
    )  # fmt: skip
    workers.set_defaults(func=_workers)

    image = sub.add_parser(
        "image", help="build the product's image locally (no registry): podman, debootstrap base; `load` also "
        "imports it into the real node of --dir under the chart's default image name",
    )  # fmt: skip
    image.add_argument("action", choices=["build", "load"])
    image.add_argument("--dir", type=Path, default=None, help="load: the real node's cluster folder (.dev/cluster)")
    image.add_argument("--root", type=Path, default=None, help="repository checkout (default: found from the cwd)")
    image.add_argument("--cache", type=Path, default=None, help="cache folder (default: <tools cache>/images)")
    image.set_defaults(func=_image)


def _cluster(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.dir or default_root(), real_node=args.real_node, simulated_nodes=args.simulated_nodes)
    try:
        if args.action == "up":
            cluster.up(extra_nodes=args.extra_nodes)
            print(cluster.env(), end="")
        elif args.action == "down":
            problems = cluster.down()
            for problem in problems:
                print(f"left behind: {problem}")
            return 1 if problems else 0
        else:
            print(cluster.env(), end="")
    except ClusterError as e:
        print(f"error: {e}")
        return 1
    return 0


def _image(args: argparse.Namespace) -> int:
    from ffrtmp.dev.image import ImageError, build_image

    try:
        built = build_image(args.root, args.cache)
    except ImageError as e:
        print(f"error: {e}")
        return 1
    how = "cached" if built.cached else f"built in {built.build_seconds:.1f}s"
    print(f"image:   {built.reference} ({how}, base {built.base})")
    print(f"archive: {built.archive}")
    print(f"size:    {built.size_bytes} bytes ({built.size_bytes / 1e6:.0f} MB, uncompressed)")
    if args.action == "load":
        cluster = LocalCluster(args.dir or default_root())
        chart = chart_image_reference()
        try:
            seconds = cluster.load_image(built.archive, built.reference, chart)
        except ClusterError as e:
            print(f"error: {e}")
            return 1
        print(f"loaded:  {built.reference} and {chart} into the real node in {seconds:.1f}s")
    return 0


def chart_image_reference() -> str:
    """The image the chart uses by default: `<operator.image.repository>:<appVersion>`."""
    import yaml

    from ffrtmp.dev.cluster import repo_root

    chart = repo_root() / "charts" / "ffmpeg-rtmp"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    return f"{values['operator']['image']['repository']}:{app_version}"


def _workers(args: argparse.Namespace) -> int:
    from ffrtmp.dev.workers import StandInKubelet
    from ffrtmp.kube.client import KubeClient
    from ffrtmp.kube.config import load_config

    logs.configure()
    extra = dict(item.split("=", 1) for item in args.env)
    guard = extra.get(LIBRARY_ENV) or str(default_connect_guard())
    if guard != OFF and not Path(guard).is_file():
        print(f"no connect guard library at {guard}: build it with `hack/tools.sh --connect-guard` (make setup "
              f"does), or pass --env {LIBRARY_ENV}=off to run ffmpeg unguarded", file=sys.stderr)  # fmt: skip
        return 1

    async def main() -> None:
        async with KubeClient(load_config(args.kubeconfig), component="ffrtmp-dev") as client:
            kubelet = StandInKubelet(
                client, args.namespace, args.state_dir,
                worker_kubeconfig=args.worker_kubeconfig or args.kubeconfig,
                extra_env=extra, restart_delay=args.restart_delay, pod_bound_tokens=args.pod_bound_tokens,
            )  # fmt: skip
            task = asyncio.create_task(kubelet.run())
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            task.cancel()
            await kubelet.stop_all()

    asyncio.run(main())
    return 0
