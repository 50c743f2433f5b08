"""The sandbox child's process boundary (layer 4, namespaces): run inside the child, never imported there.
The host sends this file compiled in the set-up message (`kernel.jail_code`); `child.py` runs it and calls
`enter`, which splits the child in two:

- the **supervisor** (the process the host started) creates a user, PID, IPC, network and UTS namespace,
  forks, holds the host's result pipe, and never runs program code. When the program's process ends it
  writes one header line (the program's exit status, its pre-program layer report, quota and overflow
  flags) followed by the program's result, so nothing the program writes can pose as the header;
- the **program's process** is PID 1 of the new PID namespace (it cannot name the host, its siblings or any
  other process), unshares a mount namespace and pivots into a minimal root: a read-only tmpfs holding only
  the read roots (bind-mounted read-only) and the working directory, a size- and inode-capped tmpfs. It
  never holds the host's result pipe, only its own pipe to the supervisor.

Every step degrades: a step the kernel refuses leaves its layer out of the report (the host names it as
missing). Standard library only, like child.py; nothing here may import lmstack.
"""

import os

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
SANDBOX_ID = 1000  # the program's uid and gid inside its user namespace (mapped to the host's own)
READY_MAX = 4096  # the pre-program layer report is one line, written in one pipe write
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}  # no libc wrapper; numbers by architecture
MOUNT_SETATTR = 442  # the same number on every architecture


def enter(req: dict, layers: list) -> int:
    """Set up the namespaces and fork. In the supervisor this never returns; in the program's process it
    returns the fd for the result (after closing every other fd it inherited, the host's result pipe too)."""
    libc = None
    if req["kernel"]:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_char_p)
        libc.syscall.restype = ctypes.c_long
        outer_namespaces(libc, layers)
    result_fd = req["result_fd"]
    try:
        read_end, write_end = os.pipe()
        pid = os.fork()
    except OSError as exc:
        write_header(result_fd, {"error": f"could not start the program's process: {exc}"}, b"")
        os._exit(0)
    if pid:
        os.close(write_end)
        os.close(0)  # the job on stdin is for the program's process
        supervise(pid, read_end, result_fd, req)
        os._exit(0)
    os.closerange(3, write_end)
    os.closerange(write_end + 1, 1 << 16)
    if libc is not None:
        jail_filesystem(libc, req, layers)
    if "tmpfs_quota" not in layers:
        layers.append("polled_quota")  # the supervisor polls the working directory instead
    return write_end


# --------------------------------------------------------------------------------------------------------
# The supervisor: namespaces for its child, then wait, relay and report.


def outer_namespaces(libc: object, layers: list) -> None:
    """A user namespace (so this works unprivileged) owning new PID, IPC, network and UTS namespaces; without
    a user namespace (disabled, or restricted by an LSM) the others are still tried, which works for root."""
    import ctypes

    others = CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | others) == 0:
        maps = (("setgroups", "deny"), ("uid_map", f"{SANDBOX_ID} {uid} 1"), ("gid_map", f"{SANDBOX_ID} {gid} 1"))
        try:
            for name, text in maps:
                fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
                try:
                    os.write(fd, text.encode())
                finally:
                    os.close(fd)
            layers.append("user_ns")
        except OSError:
            pass  # the namespace exists but has no mapping: the mount step below fails and says so
    elif libc.unshare(others) != 0:
        return
    layers += ["pid_ns", "ipc_ns", "net_ns", "uts_ns"]
    libc.sethostname(b"sandbox", ctypes.c_size_t(7))  # a UTS namespace starts with the host's name
    libc.prctl(4, *[ctypes.c_ulong(0)] * 4)  # PR_SET_DUMPABLE 0: nothing of the same uid can open /proc/<this>/fd


def supervise(pid: int, read_end: int, result_fd: int, req: dict) -> None:
    """Relay the program's result to the host behind a header only this process writes. Until the program's
    process reports a tmpfs quota, poll the working directory's size and file count instead."""
    cap, ready, body = req["result_bytes"], b"", bytearray()
    got_ready = quota = overflow = False
    poll = True
    workdir = os.getcwd()
    while True:
        if poll:
            import select

            if not select.select([read_end], [], [], 0.05)[0]:
                if over_quota(workdir, req["disk_mb"] << 20, req["max_files"]):
                    quota, poll = True, False
                    kill(pid)
                continue
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        if not got_ready:
            ready += chunk
            cut = ready.find(b"\n")
            if cut < 0:
                ready = ready[:READY_MAX]
                continue
            ready, chunk, got_ready = ready[:cut], ready[cut + 1 :], True
            poll = poll and b'"tmpfs_quota"' not in ready
        if not overflow:
            body += chunk[: cap + 1 - len(body)]
            if len(body) > cap:
                overflow = True
                kill(pid)
    status = os.waitpid(pid, 0)[1]
    if poll and not quota:  # a burst between two polls still counts
        quota = over_quota(workdir, req["disk_mb"] << 20, req["max_files"])
    header = {
        "status": os.waitstatus_to_exitcode(status),
        "ready": ready.decode("utf-8", "replace") if got_ready else "",
        "quota": quota,
        "overflow": overflow,
    }
    write_header(result_fd, header, bytes(body[:cap]))


def kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except OSError:
        pass


def write_header(fd: int, header: dict, body: bytes) -> None:
    """One JSON line of plain values (str, int, bool), then the program's raw result bytes."""
    from _json import encode_basestring_ascii as encode_str

    parts = []
    for key, value in header.items():
        if type(value) is bool:
            text = "true" if value else "false"
        else:
            text = encode_str(value) if type(value) is str else str(int(value))
        parts.append(encode_str(key) + ":" + text)
    data = ("{" + ",".join(parts) + "}\n").encode() + body
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        pass


def over_quota(root: str, max_bytes: int, max_files: int) -> bool:
    """Whether the tree under `root` holds more than `max_files` entries or `max_bytes` of blocks. Iterative
    and bounded: it stops counting once the file limit is passed."""
    stack, count, used = [root], 0, 0
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    count += 1
                    if count > max_files:
                        return True
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    used += info.st_blocks * 512
                    if used > max_bytes:
                        return True
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return False


# --------------------------------------------------------------------------------------------------------
# The program's process: a private mount namespace whose root holds only what the program needs.


def jail_filesystem(libc: object, req: dict, layers: list) -> None:
    """Pivot into a fresh root: the read roots bind-mounted read-only, the interpreter's site-packages
    hidden, and the working directory (the same path as the host's temp dir) a capped tmpfs. No /proc, /sys,
    /dev, /home or /tmp: host files and metadata do not exist here, so stat and inotify cannot reach them.
    If a step fails, what was mounted is detached again and the process keeps the host's view (Landlock
    still applies; the supervisor polls the quota)."""
    work = os.getcwd()  # the host's (empty) temp dir: also the mount point of the new root
    if libc.unshare(CLONE_NEWNS) != 0 or mount(libc, None, "/", None, MS_REC | MS_PRIVATE) != 0:
        return
    if mount(libc, "tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=1024,mode=0755") != 0:
        return
    try:
        built = build_root(libc, req, work) and pivot_into(libc, work)
    except OSError:
        built = False
    if not built:
        libc.umount2(work.encode(), 2)  # MNT_DETACH: the half-built root and everything on it
        os.chdir(work)
        return
    os.chdir(work)
    mount(libc, None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    layers += ["mount_ns", "tmpfs_quota"]


def build_root(libc: object, req: dict, root: str) -> bool:
    """Fill the new root's tmpfs: read-only binds, hidden dirs, loader symlinks, the capped working dir."""
    import ctypes

    bound: list[str] = []
    for src in sorted(req["read_roots"]):
        if any(src.startswith(b + "/") for b in bound):
            continue  # already visible through an enclosing bind
        if not bind_read_only(libc, ctypes, src, root + src):
            return False
        bound.append(src)
    for path in req["jail_hidden"]:
        if mount(libc, "tmpfs", root + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0555") != 0:
            return False
    for link, target in req["jail_links"]:
        if not os.path.lexists(root + link):
            os.symlink(target, root + link)
    os.makedirs(root + root)
    quota = f"size={req['disk_mb']}m,nr_inodes={req['max_files'] + 1},mode=0700"
    return mount(libc, "tmpfs", root + root, "tmpfs", MS_NOSUID | MS_NODEV, quota) == 0


def pivot_into(libc: object, root: str) -> bool:
    """Make `root` the root and detach the old one (pivot_root(".", "."), then unmount what is on top)."""
    import ctypes

    pivot = PIVOT_ROOT.get(os.uname().machine)
    if pivot is None:
        return False
    os.chdir(root)
    return libc.syscall(ctypes.c_long(pivot), b".", b".") == 0 and libc.umount2(b".", 2) == 0  # MNT_DETACH


def mount(
    libc: object, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> int:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    return libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data))


def bind_read_only(libc: object, ctypes: object, src: str, dst: str) -> bool:
    """Bind `src` (recursively) at `dst` and make the whole bound tree read-only, nosuid and nodev."""
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o644))
    if mount(libc, src, dst, None, MS_BIND | MS_REC) != 0:
        return False
    attr = ctypes.create_string_buffer((MS_RDONLY | MS_NOSUID | MS_NODEV).to_bytes(8, "little") + bytes(24), 32)
    at_fdcwd, at_recursive = ctypes.c_int(-100), ctypes.c_uint(0x8000)  # MOUNT_ATTR_* equal MS_* for these three
    if libc.syscall(ctypes.c_long(MOUNT_SETATTR), at_fdcwd, dst.encode(), at_recursive, attr, ctypes.c_size_t(32)) == 0:
        return True
    # kernels before 5.12: remount the top of the tree read-only, keeping the flags the kernel locked
    kept = os.statvfs(dst).f_flag & (MS_NOSUID | MS_NODEV | 8 | 1024 | 2048)  # + noexec, noatime, nodiratime
    return mount(libc, None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept) == 0
