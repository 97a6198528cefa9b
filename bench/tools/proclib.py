"""Process and port helpers shared by the bench tools (grpc_peers, h2_peers, kill_target):
wait for a port, wait for it to be free, refuse one a leftover process holds, stop a
process, and a process tree's CPU time."""
import os
import signal
import socket
import sys
import subprocess
import time

CLK = os.sysconf("SC_CLK_TCK")


class SubjectFailed(Exception):
    """A subject (proxy or origin) did not start or did not serve: the round says so and goes on."""


def wait_port(port, proc=None, limit=10.0):
    """Until 127.0.0.1:port accepts; fails early when `proc` exits first."""
    end = time.time() + limit
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise SubjectFailed("exited with status %s before listening" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SubjectFailed("port %d never opened" % port)


def require_free(*addrs):
    """Fails at once when something already listens on one of `addrs` ("host:port" strings or
    port numbers on 127.0.0.1): a process left from an earlier run would answer in place of the
    one about to start (or, with SO_REUSEPORT, share its connections), and the figures with it."""
    for a in addrs:
        if isinstance(a, int):
            host, port = "127.0.0.1", a
        else:
            host, port = a.rsplit(":", 1)[0].strip("[]"), int(a.rsplit(":", 1)[1])
        try:
            socket.create_connection((host, port), timeout=0.2).close()
        except OSError:
            continue
        sys.exit("%s:%d is already in use (a process left from an earlier run? "
                 "`ss -ltnp 'sport = :%d'` names it): stop it first" % (host, port, port))


def port_free(port, limit=10.0):
    """Until nothing listens on 127.0.0.1:port (the previous subject has gone)."""
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            time.sleep(0.1)
        except OSError:
            return
    raise SubjectFailed("port %d is still in use (a leftover process?)" % port)


def stop(p):
    """SIGTERM, then SIGKILL after 10 s; `None` or an ended process is left alone."""
    if p is not None and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tree_cpu_seconds(pid):
    """utime+stime of pid and its children (nginx: master and worker)."""
    user, sys_ = tree_cpu_split(pid)
    return user + sys_


def tree_cpu_split(pid):
    """(utime, stime) of pid and its live children, in seconds: user space and kernel. The
    children's reaped descendants (cutime, cstime) are left out: a proxy's workers live for the
    whole run."""
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    user = sys_ = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            sys_ += int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return user / CLK, sys_ / CLK
