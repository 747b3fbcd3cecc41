"""The `pmemd` command line: one subcommand per job, each in a function of its own."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from pmemd.config import Config

EXIT_USAGE = 2
EXIT_BAD_VALUE = 1


def _load_config(args: argparse.Namespace) -> Config:
    from pmemd import config as configmod  # imported when needed: `pmemd run` binds QMP first

    try:
        return configmod.load(args.config, domid=getattr(args, "domain", None))
    except configmod.ConfigError as e:
        print(f"pmemd: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_VALUE) from None


def cmd_acpi(args: argparse.Namespace) -> int:
    """Write NFIT.bin, SSDT.bin and NVDR.bin for a config and print a JSON summary."""
    from acpi.table import parse_tables
    from pmemd.daemon.tables import build_tables

    cfg = _load_config(args)
    tables = build_tables(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for name, data in tables.files().items():
        (out / name).write_bytes(data)
        entry: dict = {"file": str(out / name), "length": len(data)}
        if name != "NVDR.bin":
            try:
                parse_tables(data)  # ACPI.bin holds two tables; the others one
                entry["checksum_ok"] = True
            except ValueError:
                entry["checksum_ok"] = False
        summary.append(entry)
    print(json.dumps({"domid": cfg.domid, "nvdimms": len(cfg.nvdimms), "tables": summary}, indent=2))
    return 0


def _hypervisor_socket(args: argparse.Namespace, cfg: Config) -> str:
    path = getattr(args, "hypervisor", None) or cfg.xen.hypervisor
    if path == "embedded":
        print("pmemd: this command needs the simulator's socket: set [xen] hypervisor or pass --hypervisor",
              file=sys.stderr)
        raise SystemExit(EXIT_BAD_VALUE)
    return path


def cmd_sim(args: argparse.Namespace) -> int:
    """Run the simulated Xen host (hypervisor, and xenstored when asked) until SIGTERM/SIGINT."""
    import trio

    from pmemd.process import logs
    from pmemd.process.lifecycle import run_until_signalled
    from pmemd.sim.hv_pmem import load_host_pmem
    from pmemd.sim.hypervisor import Hypervisor, serve_hypervisor
    from pmemd.xen.errors import HypervisorError

    logs.configure(args.log_format)
    if args.acpi_out and not args.xenstore:
        print("pmemd: --acpi-out needs --xenstore (hvmloader reads the dm-acpi keys there)", file=sys.stderr)
        return EXIT_USAGE
    hypervisor = Hypervisor()
    try:
        for path in args.host_pmem:
            for region in load_host_pmem(path):
                hypervisor.pmem.add_region(region)
    except HypervisorError as e:
        print(f"pmemd: --host-pmem: {e.message}", file=sys.stderr)
        return EXIT_BAD_VALUE

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_hypervisor, args.socket, hypervisor=hypervisor))
            if args.xenstore:
                from pmemd.sim.hvmloader import attach
                from pmemd.xenstored.server import serve_xenstored

                store = await nursery.start(serve_xenstored, args.xenstore)
                attach(hypervisor, store, Path(args.acpi_out) if args.acpi_out else None)
            print("ready", flush=True)

    return run_until_signalled(main)


def cmd_run(args: argparse.Namespace) -> int:
    """Serve one guest's NVDIMMs until SIGTERM/SIGINT or until its domain disappears.

    Order (varstored's): check the flags, read the config, take the pidfile (0600, locked
    for the process life), connect to $NOTIFY_SOCKET, then the daemon's setup steps —
    which drop privileges last when `--depriv` asks — then READY=1.
    """
    import contextlib
    import dataclasses
    import functools

    import trio

    from pmemd.daemon.guest import RunOptions
    from pmemd.daemon.serve import serve_guest
    from pmemd.process import logs
    from pmemd.process.depriv import DeprivError, DeprivPlan, unshare_namespaces
    from pmemd.process.lifecycle import SystemdNotifier, run_until_signalled
    from pmemd.process.pidfile import PidfileError, pidfile

    cfg = _load_config(args)
    if args.qmp:
        cfg = dataclasses.replace(cfg, qmp_socket=Path(args.qmp))
    logs.configure(args.log_format, domid=cfg.domid)
    socket = "" if cfg.dsm.transport == "qemu" else _hypervisor_socket(args, cfg)
    plan = None
    if args.depriv:
        largest = max((d.size for d in cfg.nvdimms), default=0)
        plan = DeprivPlan(args.uid, args.gid, Path(args.chroot) if args.chroot else None,
                          max_file_size=max(largest, 1 << 20) + (1 << 20))
        try:
            plan.check()
        except DeprivError as e:
            print(f"pmemd: {e}", file=sys.stderr)
            return EXIT_BAD_VALUE
    if args.resume and not Path(args.resume).is_file():
        print(f"pmemd: --resume {args.resume}: no such file", file=sys.stderr)
        return EXIT_BAD_VALUE
    options = RunOptions(plan, Path(args.save) if args.save else None, Path(args.resume) if args.resume else None,
                         paused=args.paused, early_qmp=getattr(args, "early_qmp", None))
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(pidfile(args.pidfile))
        except PidfileError as e:
            print(f"pmemd: {e.strerror}", file=sys.stderr)
            return EXIT_BAD_VALUE
        notifier = held.enter_context(contextlib.closing(SystemdNotifier()))
        if plan is not None:
            try:
                unshare_namespaces()  # while single-threaded; the rest of depriv ends setup
            except DeprivError as e:
                print(f"pmemd: {e}", file=sys.stderr)
                return EXIT_BAD_VALUE

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                if options.early_qmp is not None:  # keep greeting until the "qmp" step adopts it
                    nursery.start_soon(options.early_qmp.serve_until_adopted)
                await nursery.start(functools.partial(serve_guest, cfg, socket, options=options))
                notifier.ready()

        try:
            return run_until_signalled(main, on_signal=notifier.stopping)
        except Exception as e:  # one line for the toolstack; the details are in the log
            print(f"pmemd: domain {cfg.domid}: {_first_error(e)}", file=sys.stderr)
            return EXIT_BAD_VALUE


def _first_error(e: BaseException) -> str:
    """The innermost first error of a (nested) exception group, as one line."""
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _check_run_usage(args: argparse.Namespace) -> str | None:
    """Flag combinations `pmemd run` refuses as usage errors (exit 2)."""
    if args.depriv and (args.uid is None or args.gid is None):
        return "--depriv needs --uid and --gid"
    if not args.depriv and (args.uid is not None or args.gid is not None or args.chroot):
        return "--uid, --gid and --chroot only go with --depriv"
    return None


def cmd_domain(args: argparse.Namespace) -> int:
    """Do what the toolstack does with a simulated domain."""
    from pmemd.sim.client.control import DomainControl
    from pmemd.toolstack import ToolstackError
    from pmemd.xen.errors import HypervisorError
    from pmemd.xenstore import XenstoreError

    cfg = _load_config(args)
    extra: dict = {}
    try:
        with DomainControl(_hypervisor_socket(args, cfg)) as control:
            if args.action == "create":
                info = control.create_from(cfg.domid, cfg.guest)
                extra = _toolstack_create(control, cfg)
            elif args.action == "unpause":
                control.unpause(cfg.domid)
                info = control.info(cfg.domid)
            elif args.action == "destroy":
                control.destroy(cfg.domid)
                if cfg.xen.xenstore != "embedded":
                    from pmemd import toolstack

                    toolstack.destroy(cfg.domid, cfg.xen.xenstore)
                print(json.dumps({"domid": cfg.domid, "state": "destroyed"}))
                return 0
            else:
                info = control.info(cfg.domid)
    except (HypervisorError, OSError, ToolstackError, XenstoreError) as e:
        print(f"pmemd: domain {args.action} {cfg.domid}: {e}", file=sys.stderr)
        return EXIT_BAD_VALUE
    print(json.dumps({"domid": info.domid, "state": info.state, "vcpus": info.vcpus,
                      **({"crash_reason": info.crash_reason} if info.crash_reason else {}), **extra}))
    return 0


def _toolstack_create(control, cfg) -> dict:  # type: ignore[no-untyped-def]
    """With `[xen] xenstore` naming a socket: the domain's home and the dm-acpi buffer keys, as
    libxl writes them (`pmemd.toolstack`). If that fails the new domain is destroyed again."""
    if cfg.xen.xenstore == "embedded":
        return {}
    from pmemd import toolstack

    try:
        buffer = toolstack.create(cfg, cfg.xen.xenstore)
    except BaseException:
        control.destroy(cfg.domid)
        raise
    return {"dm_acpi": {"address": hex(buffer.address), "length": hex(buffer.length)}}


def cmd_guest(args: argparse.Namespace) -> int:
    """Run a JSON Lines script of _DSM calls and memory accesses as the guest."""
    from pmemd.sim.guest_driver import Guest, run_script

    cfg = _load_config(args)
    guest = Guest(cfg, _hypervisor_socket(args, cfg))
    if args.script == "-":
        return run_script(guest, sys.stdin, sys.stdout)
    try:
        with open(args.script) as script:
            return run_script(guest, script, sys.stdout)
    except OSError as e:
        print(f"pmemd: cannot read script {args.script}: {e.strerror}", file=sys.stderr)
        return EXIT_BAD_VALUE


def cmd_firmware_image(args: argparse.Namespace) -> int:
    """Write a firmware image a virtual Intel DIMM verifies (`pmemd.dsm.firmware_image`)."""
    from pmemd.dsm.firmware_image import build_image

    try:
        version = int(args.version, 0)
        payload = Path(args.payload).read_bytes() if args.payload else b""
        image = build_image(version, payload)
    except ValueError as e:
        print(f"pmemd: firmware-image: {e}", file=sys.stderr)
        return EXIT_BAD_VALUE
    except OSError as e:
        print(f"pmemd: firmware-image: cannot read {args.payload}: {e.strerror}", file=sys.stderr)
        return EXIT_BAD_VALUE
    Path(args.out).write_bytes(image)
    print(json.dumps({"out": args.out, "version": f"{version:#x}", "bytes": len(image)}))
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    """Boot a real Linux guest under QEMU against the daemon and run a shell script in it."""
    from pmemd.config import ConfigError
    from pmemd.lab.image import ImageError, prepare
    from pmemd.lab.run import LabOptions, run_lab

    if args.xen:
        return _xen_lab(args)
    if args.again or args.dsm_modes:
        print("pmemd: --again and --dsm-modes need --xen", file=sys.stderr)
        return EXIT_BAD_VALUE
    try:
        boot = prepare(kernel=Path(args.kernel) if args.kernel else None,
                       modules=Path(args.modules) if args.modules else None)
    except ImageError as e:
        print(f"pmemd: lab image: {e}", file=sys.stderr)
        return EXIT_BAD_VALUE
    options = LabOptions(Path(args.config), Path(args.script), Path(args.keep) if args.keep else None,
                         args.timeout, args.stop_daemon_after_calls, append=args.append,
                         early=Path(args.early) if args.early else None)
    try:
        return run_lab(options, boot)
    except ConfigError as e:
        print(f"pmemd: {e}", file=sys.stderr)
        return EXIT_BAD_VALUE


def _xen_lab(args: argparse.Namespace) -> int:
    """`pmemd lab --xen`: the nested Xen 4.17 lab (`pmemd.lab.xen_run`)."""
    from pmemd.config import ConfigError
    from pmemd.lab.image import ImageError
    from pmemd.lab.xen_image import prepare_xen
    from pmemd.lab.xen_run import XenLabOptions, run_xen_lab

    if args.stop_daemon_after_calls is not None:
        print("pmemd: --stop-daemon-after-calls is the QEMU lab's drill; the Xen lab's guest prints "
              "'pmemd-lab: kill-daemon' / 'pmemd-lab: restart-daemon'", file=sys.stderr)
        return EXIT_BAD_VALUE
    modes = args.dsm_modes.split(",") if args.dsm_modes else ["ram"]
    try:
        files = prepare_xen()
    except ImageError as e:
        print(f"pmemd: xen lab image: {e}", file=sys.stderr)
        return EXIT_BAD_VALUE
    options = XenLabOptions(Path(args.config), [Path(args.script), *map(Path, args.again)], modes,
                            Path(args.keep) if args.keep else None, args.timeout,
                            firmware=Path(args.firmware).resolve() if args.firmware else None)
    try:
        return run_xen_lab(options, files)
    except ConfigError as e:
        print(f"pmemd: {e}", file=sys.stderr)
        return EXIT_BAD_VALUE


def cmd_release(args: argparse.Namespace) -> int:
    """After a daemon died (SIGKILL, crash) on real Xen: disable the ioreq servers it recorded in
    xenstore, so the guest's accesses go to QEMU-xen, complete the requests the dead daemon left
    in them as unhandled (a `_DSM` call then ends with a status instead of a vCPU blocked on a
    dead server), and mark the state `error` / `daemon-died`. A restarted `pmemd run` adopts and
    re-enables them. The systemd unit's ExecStopPost."""
    import trio

    from pmemd.daemon import state_key
    from pmemd.ioreq.stranded import complete_stranded
    from pmemd.xen.backends import connect_hypervisor

    cfg = _load_config(args)

    async def release() -> tuple[dict[str, int], dict[str, int]]:
        completed: dict[str, int] = {}
        async with state_key.open_daemon_client(cfg.xen.xenstore) as xs:
            servers = await state_key.recorded_servers(xs, cfg.domid)
            hv = await connect_hypervisor(cfg.xen.hypervisor, cfg.domid)
            try:
                for name, server in servers.items():
                    await hv.set_ioreq_server_state(server, False)  # first: nothing new arrives
                    completed[name] = await complete_stranded(hv, server)
            finally:
                await hv.aclose()
            await state_key.write_state(xs, cfg.domid, state_key.ERROR, "daemon-died")
        return servers, completed

    try:
        servers, completed = trio.run(release)
    except Exception as e:
        print(f"pmemd: release failed: {_first_error(e)}", file=sys.stderr)
        return 1
    print(json.dumps({"domid": cfg.domid, "disabled_ioreq_servers": servers, "completed_requests": completed}))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Make every NVDIMM's backing file mappable (allocated, written, unshared), verify it and
    record its layout; one JSON report per NVDIMM. The only command that writes guest data."""
    from pmemd.storage import StorageError, prepare_backing

    cfg = _load_config(args)
    status = 0
    for index, nvdimm in enumerate(cfg.nvdimms):
        try:
            r = prepare_backing(nvdimm)
        except (StorageError, OSError) as e:
            print(f"pmemd: nvdimm[{index}]: {e}", file=sys.stderr)
            status = EXIT_BAD_VALUE
            continue
        print(json.dumps({"nvdimm": index, "backing": str(r.path), "size": r.size, "created": r.created,
                          "previous_size": r.previous_size, "unshared": r.unshared, "zeroed": r.zeroed,
                          "extents": r.extents, "fingerprint": r.fingerprint, "recorded": r.recorded}))
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the main job on the embedded default config and print a readable report."""
    from pmemd.sim.demo import run_demo

    return run_demo(args)


def cmd_qmp_health(args: argparse.Namespace) -> int:
    """Container HEALTHCHECK: ask the daemon's QMP socket `query-status`; 0 when it answers."""
    import os

    from pmemd.qmp.probe import qmp_status

    path = args.socket or os.environ.get("PMEMD_QMP")
    if args.config:
        path = str(_load_config(args).qmp_socket)
    if not path:
        print("pmemd: qmp-health needs --socket, --config or $PMEMD_QMP", file=sys.stderr)
        return EXIT_USAGE
    try:
        status = qmp_status(path, timeout=args.timeout)
    except (OSError, ValueError) as e:
        print(f"pmemd: qmp-health {path}: {e}", file=sys.stderr)
        return EXIT_BAD_VALUE
    print(json.dumps(status))
    return 0


def build_parser() -> argparse.ArgumentParser:
    import argparse  # here, not at the top: `pmemd run` binds its QMP socket before this

    parser = argparse.ArgumentParser(
        prog="pmemd",
        description="Per-guest Xen device model for virtual NVDIMMs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("acpi", help="build the guest's NFIT, SSDT, NVDR body and event SSDT from a config, "
                                    "and ACPI.bin (NFIT + SSDT) for xl's acpi_firmware=")
    p.add_argument("--config", required=True, help="guest config (TOML)")
    p.add_argument("--out", required=True, help="directory for NFIT.bin, SSDT.bin, NVDR.bin, NVEV.bin, ACPI.bin")
    p.set_defaults(func=cmd_acpi)

    p = sub.add_parser("run", help="serve one guest's NVDIMMs (the per-guest daemon)")
    p.add_argument("--config", required=True, help="guest config (TOML)")
    p.add_argument("--domain", type=int, help="domain id (overrides the config's domid)")
    p.add_argument("--hypervisor", help='"xen" (real Xen) or a simulated hypervisor socket (overrides [xen] hypervisor)')
    p.add_argument("--pidfile", help="write the pid here (0600), locked while the daemon lives")
    p.add_argument("--qmp", metavar="PATH", help="QMP socket (overrides [qmp] socket), bound first thing")
    p.add_argument("--resume", metavar="FILE", help="load device state saved by --save before serving")
    p.add_argument("--save", metavar="FILE", help="save device state here when stopped by SIGTERM/SIGINT")
    p.add_argument("--paused", action="store_true",
                   help="start stopped, like QEMU's -S: QMP query-status says prelaunch until cont")
    p.add_argument("--depriv", action="store_true", help="drop root after setup (needs --uid and --gid)")
    p.add_argument("--uid", type=int, help="user id to run as after --depriv")
    p.add_argument("--gid", type=int, help="group id to run as after --depriv")
    p.add_argument("--chroot", help="directory to chroot into after setup (with --depriv)")
    p.add_argument("--log-format", choices=["json", "console"], default=None,
                   help="log format (default: json, console on a terminal)")
    p.set_defaults(func=cmd_run, check=_check_run_usage)

    p = sub.add_parser("qmp-health", help="ask a daemon's QMP socket query-status (container HEALTHCHECK)")
    p.add_argument("--socket", help="QMP socket (default: $PMEMD_QMP)")
    p.add_argument("--config", help="take the socket from this guest config's [qmp] socket")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answers (default 5)")
    p.set_defaults(func=cmd_qmp_health)

    p = sub.add_parser("sim", help="run the simulated Xen host")
    p.add_argument("--socket", required=True, help="Unix socket for the simulated hypervisor")
    p.add_argument("--xenstore", help="also serve an embedded xenstored on this Unix socket")
    p.add_argument("--acpi-out", metavar="DIR",
                   help="with --xenstore: write the tables hvmloader loads at each domain's boot to DIR/dom<D>/")
    p.add_argument("--host-pmem", action="append", default=[], metavar="FILE",
                   help="TOML [[region]] tables describing host pmem and its files (repeatable)")
    p.add_argument("--log-format", choices=["json", "console"], default="json", help="log format (default json)")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("domain", help="create, unpause, destroy or inspect a simulated domain")
    p.add_argument("action", choices=["create", "unpause", "destroy", "info"])
    p.add_argument("--config", required=True, help="guest config (TOML): domid, vCPUs, memory layout")
    p.add_argument("--domain", type=int, help="domain id (overrides the config's domid)")
    p.add_argument("--hypervisor", help="simulated hypervisor socket (overrides [xen] hypervisor)")
    p.set_defaults(func=cmd_domain)

    p = sub.add_parser("guest", help="run scripted _DSM calls as the simulated guest")
    p.add_argument("--config", required=True, help="guest config (TOML)")
    p.add_argument("--domain", type=int, help="domain id (overrides the config's domid)")
    p.add_argument("--hypervisor", help="simulated hypervisor socket (overrides [xen] hypervisor)")
    p.add_argument("script", help="JSON Lines script, or - for standard input")
    p.set_defaults(func=cmd_guest)

    p = sub.add_parser("lab", help="boot a Linux guest under QEMU against the daemon, run a script in it")
    p.add_argument("--config", required=True, help="guest config (TOML); served over the qemu transport")
    p.add_argument("--keep", help="keep tables, console.log, daemon.log and summary.json in this directory")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before the guest is stopped (exit 124)")
    p.add_argument("--stop-daemon-after-calls", type=int, metavar="N",
                   help="fault drill: stop the daemon after N _DSM calls; the guest must still boot")
    p.add_argument("--kernel", metavar="IMG",
                   help="boot this kernel (bzImage, or a CONFIG_PVH vmlinux) instead of Debian's")
    p.add_argument("--modules", metavar="DIR",
                   help="that kernel's modules: the INSTALL_MOD_PATH of `make modules_install` "
                        "(or its lib/modules/<release>); omit when the NVDIMM drivers are built in")
    p.add_argument("--append", default="", metavar="ARGS",
                   help="extra kernel command line, e.g. \"nfit.dyndbg=+p\"")
    p.add_argument("--early", metavar="SCRIPT",
                   help="shell script run in the guest before the NVDIMM modules load (e.g. keyctl: DIMM keys)")
    p.add_argument("--xen", action="store_true",
                   help="boot Xen 4.17 nested in QEMU with pmemd in dom0 as the guest's device model")
    p.add_argument("--again", action="append", default=[], metavar="SCRIPT",
                   help="--xen: then destroy the guest and boot a new one on the same files running SCRIPT "
                        "(repeatable)")
    p.add_argument("--firmware", metavar="ELF",
                   help="--xen: boot this bare HVM firmware (xl firmware_override) instead of Linux, e.g. "
                        "bench/xen_trap_probe.S built with as/ld; SCRIPT is then unused")
    p.add_argument("--dsm-modes", metavar="M[,M...]",
                   help="--xen: [dsm] mode of each boot, ram or mmio (default ram; the last repeats)")
    p.add_argument("script", help="shell script run in the guest; its exit status is the command's")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("firmware-image", help="write a firmware image for `ndctl update-firmware` in a guest")
    p.add_argument("--version", required=True, help="the image's firmware version (u64, e.g. 0x200000001)")
    p.add_argument("--payload", help="file whose bytes the image carries (default: none)")
    p.add_argument("--out", required=True, help="where to write the image")
    p.set_defaults(func=cmd_firmware_image)

    p = sub.add_parser("release", help="after a daemon died on real Xen: disable its ioreq servers and complete "
                                          "the requests left in them (ExecStopPost)")
    p.add_argument("--config", required=True, help="guest config (TOML)")
    p.add_argument("--domain", type=int, help="domain id (overrides the config's domid)")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("prepare", help="allocate, write, unshare and verify each NVDIMM's backing file")
    p.add_argument("--config", required=True, help="guest config (TOML)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("demo", help="run pmemd on the embedded simulator and print a report")
    p.add_argument("--config", default=None, help="guest config (default: configs/example.toml's content)")
    p.set_defaults(func=cmd_demo)
    return parser


_NOT_PREPARED = object()


def main(argv: Sequence[str] | None = None, *, early: Any = _NOT_PREPARED) -> int:
    """Run one command. `early`: what `pmemd.process.startup.prepare_run` bound for `pmemd run`
    (done here for the process's own command line when the entry point did not)."""
    if early is _NOT_PREPARED:
        from pmemd.process.startup import prepare_run

        early = prepare_run(sys.argv[1:]) if argv is None else None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.early_qmp = early
        check = getattr(args, "check", None)
        if check is not None and (problem := check(args)):
            parser.error(problem)  # usage error: exit 2
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    finally:
        if early is not None:
            early.close()  # not adopted (the daemon failed or never served QMP): clients see EOF


if __name__ == "__main__":
    sys.exit(main())
