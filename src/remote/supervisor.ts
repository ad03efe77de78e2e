import { PYTHON_VERSIONS } from './python-versions.js'

/**
 * The supervisor of remote processes, in Python (3.6+, what a cluster with ipykernel or ipyparallel surely has),
 * sent to the ssh server with every command: nothing of ipp-tunnel is installed there. Verbs: `node`, `modules`
 * (imported), `installed` (metadata first: see {@link PYTHON_VERSIONS}), `start`
 * (spec as JSON on stdin), `attach`, `wait-file`, `wait-sockets`, `interrupt`, `stop`, `status`, `list`; each answers
 * one marked JSON line. `serve` keeps one supervisor on a link: one request a line on its stdin, each answered with
 * its id (see `KeptSupervisor`), until stdin closes.
 */
export const SUPERVISOR_SOURCE = String.raw`
# The supervisor of ipp-tunnel's remote processes. Runs on the ssh server under python3 (3.6+), sent over the
# link with each command; nothing is installed there. Every answer is one line "@@ipp-tunnel@@ {json}" on
# stdout, so what a login shell prints before it is ignored.
import errno, json, os, re, select, signal, socket, stat, subprocess, sys, time

MARK = '@@ipp-tunnel@@ '
NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$')
FILE = re.compile(r'^[a-z][a-z0-9-]{0,30}\.json$')
RESERVED = ('state.json', 'exit.json')
# under serve: its pid, so that a request's child waiting on something ends when serve has (the link went)
SERVER = []


def say(obj):
    sys.stdout.write(MARK + json.dumps(obj) + '\n')
    sys.stdout.flush()


class Refused(Exception):
    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code


def node():
    try:
        with open('/proc/sys/kernel/random/boot_id') as f:
            boot = f.read().strip()
    except OSError:
        boot = ''
    return {'host': socket.gethostname(), 'boot_id': boot}


def start_time(pid):
    """The kernel's start time of pid (clock ticks since boot), or None when no such process lives."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            text = f.read()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(')') + 2:].split()
    return None if fields[0] == 'Z' else int(fields[19])


def private_dir(path):
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
        raise Refused('E_UNSAFE_PATH', '%s is not a directory' % path)
    if st.st_uid != os.getuid():
        raise Refused('E_UNSAFE_PATH', '%s belongs to uid %d, not to you' % (path, st.st_uid))
    if st.st_mode & 0o077:
        raise Refused('E_UNSAFE_PATH', '%s has mode %o: it must be 0700' % (path, st.st_mode & 0o777))


def base_dir(base, create):
    base = os.path.expanduser(base)
    if create:
        os.umask(0o077)
        try:
            os.makedirs(base, 0o700)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
    try:
        private_dir(base)
    except OSError as e:
        # nothing started here yet: every name is 'none'
        if create or e.errno != errno.ENOENT:
            raise
    return base


def proc_dir(base, name):
    if not NAME.match(name):
        raise Refused('E_USAGE', 'not a process name: %r' % name)
    return os.path.join(base, name)


def read_json(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_size > 65536:
            raise Refused('E_UNSAFE_PATH', '%s is not a file of ours' % path)
        return json.loads(os.read(fd, 65536).decode())
    finally:
        os.close(fd)


def write_json(path, obj):
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, 'w') as f:
        json.dump(obj, f)
    os.rename(tmp, path)


def create(path):
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)


def remove_dir(d):
    """Empties and removes a process directory: 0700 and ours, so what is in it was written by us or by the process
    we started (its files, sockets); only regular files and sockets of ours are removed, nothing is followed."""
    for f in os.listdir(d):
        path = os.path.join(d, f)
        try:
            st = os.lstat(path)
            if st.st_uid == os.getuid() and (stat.S_ISREG(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
                os.unlink(path)
        except OSError:
            pass
    try:
        os.rmdir(d)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise Refused('E_REMOTE', '%s holds entries that are not ours; left in place' % d)


def status_of(base, name):
    d = proc_dir(base, name)
    try:
        private_dir(d)
        state = read_json(os.path.join(d, 'state.json'))
    except OSError as e:
        if e.errno == errno.ENOENT:
            return {'name': name, 'state': 'none'}
        raise
    here = node()
    state['name'] = name
    if state.get('host') != here['host'] or state.get('boot_id') != here['boot_id']:
        state['state'] = 'elsewhere' if state.get('host') != here['host'] else 'stale'
        state['node'] = here
        return state
    try:
        state['exit'] = read_json(os.path.join(d, 'exit.json'))
    except OSError:
        pass
    supervised = start_time(state['supervisor_pid']) == state['supervisor_start']
    if not supervised:
        state['state'] = 'stale'
    else:
        state['state'] = 'exited' if 'exit' in state else 'running'
    try:
        state['lease_age'] = time.time() - os.stat(os.path.join(d, 'lease')).st_mtime
    except OSError:
        pass
    return state


def supervise(d, spec, report):
    """The detached supervisor: starts the command, relays SIGINT, ends it when the lease runs out or on SIGTERM."""
    devnull = os.open(os.devnull, os.O_RDWR)
    log = create(os.path.join(d, 'supervisor.log'))
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(create(os.path.join(d, 'lease')))
    out = create(os.path.join(d, 'out.log'))
    err = create(os.path.join(d, 'err.log'))
    for fname, text in (spec.get('files') or {}).items():
        fd = create(os.path.join(d, fname))
        os.write(fd, text.replace('{dir}', d).encode())
        os.close(fd)
    argv = [a.replace('{dir}', d) for a in spec['argv']]
    env = dict(os.environ)
    env.update(spec.get('env') or {})
    persist = spec.get('persist')
    grace = spec.get('grace', 5)
    try:
        child = subprocess.Popen(argv, stdin=devnull, stdout=out, stderr=err, env=env,
                                 cwd=spec.get('cwd') or os.path.expanduser('~'), start_new_session=True)
    except OSError as e:
        os.write(report, json.dumps({'ok': False, 'code': 'E_SPAWN', 'error': '%s: %s' % (argv[0], e.strerror)}).encode())
        os._exit(0)
    state = dict(node(), pid=child.pid, supervisor_pid=os.getpid(), supervisor_start=start_time(os.getpid()),
                 child_start=start_time(child.pid), started=time.time(), persist=persist, argv=argv, dir=d)
    write_json(os.path.join(d, 'state.json'), state)
    os.write(report, json.dumps(dict(state, ok=True, state='running')).encode())
    os.close(report)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append('term'))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    exited = None

    def relay(*_):
        if exited is None:
            try:
                os.killpg(child.pid, signal.SIGINT)
            except OSError:
                pass
    signal.signal(signal.SIGINT, relay)

    def leader_exited():
        return exited is not None or os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def end_group(first):
        # the leader is not reaped before the group is ended, so neither its pid nor the group's id can be reused
        # by another process meanwhile: killpg reaches ours or nothing
        try:
            os.killpg(child.pid, first)
        except OSError:
            return
        deadline = time.time() + grace
        while time.time() < deadline and not leader_exited():
            time.sleep(0.05)
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except OSError:
            pass

    while not stop:
        if exited is None:
            info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                exited = {'code': info.si_status} if info.si_code == os.CLD_EXITED else {'signal': info.si_status}
                write_json(os.path.join(d, 'exit.json'), exited)
                end_group(signal.SIGTERM)
        if persist is not None:
            try:
                age = time.time() - os.stat(os.path.join(d, 'lease')).st_mtime
            except OSError:
                age = float('inf')
            if age > persist:
                break
        time.sleep(0.2)
    if exited is None:
        end_group(signal.SIGTERM)
    child.wait()
    os.close(log)
    remove_dir(d)
    os._exit(0)


def start(base, name, text):
    spec = json.loads(text)
    for fname in spec.get('files') or {}:
        if not FILE.match(fname) or fname in RESERVED:
            raise Refused('E_USAGE', 'not a file name for the process directory: %r' % fname)
    base = base_dir(base, True)
    d = proc_dir(base, name)
    try:
        os.mkdir(d, 0o700)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise
        old = status_of(base, name)
        if old['state'] == 'elsewhere':
            raise Refused('E_REMOTE_NODE', '%s runs on %s, and this is %s' % (name, old['host'], old['node']['host']))
        if spec.get('replace'):
            # one command instead of stop + start: what a restarted kernel's launcher does first
            terminate(base, name, old, float(old.get('grace') or 5))
        elif old['state'] != 'stale' or old.get('host') != node()['host']:
            raise Refused('E_REMOTE_EXISTS', '%s is %s (started on %s)' % (name, old['state'], old.get('host')))
        else:
            remove_dir(d)
        os.mkdir(d, 0o700)
    private_dir(d)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        if os.fork() == 0:
            try:
                supervise(d, spec, w)
            finally:
                os._exit(1)
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    if not chunks:
        raise Refused('E_REMOTE', 'the supervisor of %s did not start (see %s/supervisor.log)' % (name, d))
    answer = json.loads(b''.join(chunks).decode())
    if not answer.get('ok'):
        remove_dir(d)
    answer['name'] = name
    say(answer)


def attach(base, name, out_offset, err_offset):
    """Streams the process's output from the given offsets; every byte read on stdin renews the lease."""
    base = base_dir(base, False)
    state = status_of(base, name)
    if state['state'] == 'elsewhere':
        raise Refused('E_REMOTE_NODE', '%s runs on %s, and this is %s' % (name, state['host'], state['node']['host']))
    if state['state'] not in ('running', 'exited'):
        raise Refused('E_REMOTE_GONE', '%s is %s' % (name, state['state']))
    d = proc_dir(base, name)
    files = []
    for fname, offset, fd in (('out.log', out_offset, 1), ('err.log', err_offset, 2)):
        f = os.open(os.path.join(d, fname), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        os.lseek(f, int(offset), os.SEEK_SET)
        files.append((f, fd))
    lease = os.path.join(d, 'lease')
    os.utime(lease, None)
    say(dict(state, ok=True))
    done = state['state'] == 'exited'
    while True:
        for f, fd in files:
            while True:
                data = os.read(f, 65536)
                if not data:
                    break
                while data:
                    data = data[os.write(fd, data):]
        if done:
            return
        ready = select.select([0], [], [], 0.1)[0]
        if ready:
            if not os.read(0, 4096):
                return
            try:
                os.utime(lease, None)
            except OSError:
                return
        done = os.path.exists(os.path.join(d, 'exit.json')) or start_time(state['supervisor_pid']) != state['supervisor_start']


def read_text(path):
    """A file of ours in a process directory, as text: regular, owned by us, at most 64 KiB, no link followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_size > 65536:
            raise Refused('E_UNSAFE_PATH', '%s is not a file of ours' % path)
        return os.read(fd, 65537).decode('utf-8', 'replace')
    finally:
        os.close(fd)


def ready_text(path, keys):
    """The text of path once it holds a JSON object whose keys are all positive integers, else None."""
    try:
        text = read_text(path)
        value = json.loads(text)
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    for k in keys:
        v = value.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            return None
    return text


def not_running(d, name, state, what):
    tail = ''
    try:
        tail = read_text(os.path.join(d, 'err.log'))[-400:].strip()
    except (OSError, Refused):
        pass
    return Refused('E_SPAWN' if state['state'] == 'exited' else 'E_REMOTE_GONE',
                   '%s is %s (%s) before %s%s' % (name, state['state'], json.dumps(state.get('exit')), what,
                                                  ': ' + tail if tail else ''))


def wait_sockets(base, name, limit, names):
    """Waits, polling here rather than over the link, until the process has bound every one of names (unix sockets
    in its directory: a kernel's channels), then answers; refuses once the process has ended or after limit s."""
    for f in names:
        if not NAME.match(f):
            raise Refused('E_USAGE', 'not a socket name for the process directory: %r' % f)
    base = base_dir(base, False)
    d = proc_dir(base, name)
    deadline = time.time() + float(limit)
    state, checked = status_of(base, name), time.time()
    while True:
        if state['state'] != 'running':
            raise not_running(d, name, state, 'it bound its sockets')
        bound = 0
        for f in names:
            try:
                bound += stat.S_ISSOCK(os.lstat(os.path.join(d, f)).st_mode)
            except OSError:
                pass
        if bound == len(names):
            say({'ok': True, 'name': name})
            return
        if time.time() > deadline:
            raise Refused('E_TIMEOUT', '%s did not bind its sockets within %s s' % (name, limit))
        if SERVER and os.getppid() != SERVER[0]:
            return
        time.sleep(0.005)
        if time.time() - checked > 0.25:
            try:
                os.utime(os.path.join(d, 'lease'), None)
            except OSError:
                pass
            state, checked = status_of(base, name), time.time()


def wait_file(base, name, fname, keys, also):
    """Waits until the process wrote fname (a JSON object with every key a positive integer: a kernel's ports) and
    answers with its text and the text of the also files; refuses once the process has ended. Returns with no answer
    when stdin closes (the caller gave up)."""
    for f in [fname] + also:
        if not FILE.match(f):
            raise Refused('E_USAGE', 'not a file name for the process directory: %r' % f)
    base = base_dir(base, False)
    state = status_of(base, name)
    d = proc_dir(base, name)
    keys = [k for k in keys.split(',') if k]
    while True:
        if state['state'] != 'running':
            raise not_running(d, name, state, 'it wrote ' + fname)
        text = ready_text(os.path.join(d, fname), keys)
        if text is not None:
            others = {}
            for f in also:
                try:
                    others[f] = read_text(os.path.join(d, f))
                except OSError:
                    pass
            say({'ok': True, 'name': name, 'text': text, 'also': others})
            return
        if select.select([0], [], [], 0.05)[0] and not os.read(0, 4096):
            return
        # someone waits for it: its lease holds (a queue wait can be longer than --persist)
        try:
            os.utime(os.path.join(d, 'lease'), None)
        except OSError:
            pass
        state = status_of(base, name)


def kill(base, name, how, grace):
    base = base_dir(base, False)
    state = status_of(base, name)
    if state['state'] == 'none':
        raise Refused('E_REMOTE_GONE', 'no process %s' % name)
    if state['state'] == 'elsewhere':
        raise Refused('E_REMOTE_NODE', '%s runs on %s, and this is %s' % (name, state['host'], state['node']['host']))
    if how == 'INT':
        if state['state'] != 'running':
            raise Refused('E_REMOTE_GONE', '%s is %s' % (name, state['state']))
        os.kill(state['supervisor_pid'], signal.SIGINT)
        say({'ok': True, 'name': name})
        return
    terminate(base, name, state, grace)
    say({'ok': True, 'name': name, 'was': state['state']})


def terminate(base, name, state, grace):
    """Stops the process of a status (on this node), removes its directory."""
    d = proc_dir(base, name)
    if state['state'] in ('running', 'exited'):
        os.kill(state['supervisor_pid'], signal.SIGTERM)
        deadline = time.time() + grace + 10
        while start_time(state['supervisor_pid']) == state['supervisor_start'] and time.time() < deadline:
            time.sleep(0.05)
    elif state.get('boot_id') == node()['boot_id'] and start_time(state['pid']) == state.get('child_start'):
        # the supervisor was killed and the boot is the same: the process is still ours
        os.killpg(state['pid'], signal.SIGKILL)
    if os.path.isdir(d):
        remove_dir(d)


SERVED = ('node', 'modules', 'installed', 'start', 'status', 'list', 'interrupt', 'stop', 'wait-sockets')


def serve():
    """Kept on a link: one request a line on stdin, {"id", "argv", "input"}, each run in a child process of its own (a
    slow stop holds no start back, and nothing of a request outlives it here), its answer relayed with its id;
    {"cancel": id} ends a request's child. Exits when stdin closes: the link went, or its owner let go."""
    say(dict(node(), ok=True, id=0, python=sys.version.split()[0]))
    SERVER.append(os.getpid())
    pending = {}
    buf = b''
    while True:
        for fd in select.select([0] + list(pending), [], [])[0]:
            if fd != 0:
                chunk = os.read(fd, 65536)
                if chunk:
                    pending[fd][2].append(chunk)
                    continue
                os.close(fd)
                rid, pid, chunks = pending.pop(fd)
                os.waitpid(pid, 0)
                text = b''.join(chunks).decode('utf-8', 'replace')
                answer = None
                at = text.rfind(MARK)
                if at >= 0:
                    try:
                        answer = json.loads(text[at + len(MARK):].split('\n', 1)[0])
                    except ValueError:
                        pass
                if not isinstance(answer, dict):
                    answer = {'ok': False, 'code': 'E_REMOTE', 'error': 'no answer: %s' % text[-300:]}
                answer['id'] = rid
                say(answer)
                continue
            data = os.read(0, 65536)
            if not data:
                return
            buf += data
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                try:
                    req = json.loads(line.decode())
                    if 'cancel' in req:
                        for rid, pid, _ in pending.values():
                            if rid == req['cancel']:
                                os.kill(pid, signal.SIGKILL)
                        continue
                    rid, argv, text = req['id'], [str(a) for a in req['argv']], req.get('input') or ''
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
                if not argv or argv[0] not in SERVED:
                    say({'ok': False, 'code': 'E_USAGE', 'error': 'not a verb of serve: %r' % argv[:1], 'id': rid})
                    continue
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    try:
                        os.close(r)
                        for fd in pending:
                            os.close(fd)
                        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                        os.dup2(w, 1)
                        os.close(w)
                        main(argv, text)
                        sys.stdout.flush()
                    finally:
                        os._exit(0)
                os.close(w)
                pending[r] = (rid, pid, [])


${PYTHON_VERSIONS}

def main(argv, text=None):
    verb = argv[0]
    try:
        if verb == 'node':
            say(dict(node(), ok=True))
        elif verb in ('modules', 'installed'):
            version = imported if verb == 'modules' else installed
            versions = dict((module, version(module)) for module in argv[1:])
            ipython_dir = os.path.abspath(os.path.expanduser(os.environ.get('IPYTHONDIR') or '~/.ipython'))
            say({'ok': True, 'python': sys.version.split()[0], 'executable': sys.executable, 'modules': versions,
                 'ipython_dir': ipython_dir})
        elif verb == 'start':
            start(argv[1], argv[2], sys.stdin.read() if text is None else text)
        elif verb == 'attach':
            attach(argv[1], argv[2], argv[3], argv[4])
        elif verb == 'wait-sockets':
            wait_sockets(argv[1], argv[2], argv[3], argv[4:])
        elif verb == 'serve':
            serve()
        elif verb == 'wait-file':
            wait_file(argv[1], argv[2], argv[3], argv[4], argv[5:])
        elif verb in ('interrupt', 'stop'):
            kill(argv[1], argv[2], 'INT' if verb == 'interrupt' else 'TERM', float(argv[3]) if len(argv) > 3 else 5)
        elif verb == 'status':
            say(dict(status_of(base_dir(argv[1], False), argv[2]), ok=True))
        elif verb == 'list':
            try:
                base = base_dir(argv[1], False)
                names = sorted(n for n in os.listdir(base) if NAME.match(n))
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                base, names = None, []
            say({'ok': True, 'processes': [status_of(base, n) for n in names]})
        else:
            raise Refused('E_USAGE', 'unknown verb %r' % verb)
    except Refused as e:
        say({'ok': False, 'code': e.code, 'error': str(e)})
    except (OSError, ValueError, KeyError) as e:
        say({'ok': False, 'code': 'E_REMOTE', 'error': '%s: %s' % (type(e).__name__, e)})


main(sys.argv[1:])
`
