import { isIP } from 'node:net'
import type { Client } from 'ssh2'
import { execOnClient } from './exec.js'
import { shellQuote } from '../shell.js'

/** Where a connection that this side gave up came from, as the server saw it (no NAT between). */
export interface StalePeer {
  readonly address: string
  readonly port: number
}

/**
 * Finds the process on the ssh server that holds exactly one TCP connection (the one whose peer is ADDRESS PORT),
 * checks it is an sshd of this user, and ends it. Sent on stdin: nothing but the address and port is a shell word.
 */
const REAP_SOURCE = String.raw`
import os, signal, socket, struct, sys, time
address, port = sys.argv[1], int(sys.argv[2])
def words(family, packed):
    return ''.join('%08X' % struct.unpack('<I', packed[i:i + 4])[0] for i in range(0, len(packed), 4))
if ':' in address:
    wanted = {words(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, address))}
else:
    v4 = socket.inet_aton(address)
    wanted = {words(socket.AF_INET, v4), words(socket.AF_INET6, b'\0' * 10 + b'\xff\xff' + v4)}
wanted = {'%s:%04X' % (w, port) for w in wanted}
inodes = set()
for table in ('/proc/net/tcp', '/proc/net/tcp6'):
    try:
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[2] in wanted:
                    inodes.add('socket:[%s]' % fields[9])
    except (OSError, StopIteration):
        pass
ended = 0
gone = []
me = os.getuid()
for pid in os.listdir('/proc'):
    if not pid.isdigit() or int(pid) in (os.getpid(), os.getppid()) or not inodes:
        continue
    try:
        if os.stat('/proc/' + pid).st_uid != me:
            continue
        with open('/proc/%s/comm' % pid) as f:
            if not f.read().startswith('sshd'):
                continue
        if any(os.readlink('/proc/%s/fd/%s' % (pid, fd)) in inodes for fd in os.listdir('/proc/%s/fd' % pid)):
            os.kill(int(pid), signal.SIGTERM)
            ended += 1
            gone.append(pid)
    except OSError:
        pass
# answer once they are gone, so that nothing of theirs is left when the new connection is used
for _ in range(100):
    if not any(os.path.exists('/proc/' + pid) for pid in gone):
        break
    time.sleep(0.01)
print(ended)
`

/**
 * Ends, over a new connection, the server's side of the connection this side gave up (its address gone, or no
 * answer): sshd would keep it, and the forwarded connections it holds, until its own timeouts — minutes or hours —
 * and meanwhile a ZeroMQ ROUTER behind it (ipcontroller's, a kernel's) refuses the peer that comes back with the same
 * identity: engines and Clients could not reconnect (ipython#6444). Only the one sshd process that holds exactly
 * that connection, and only one of this user, is ended. Resolves how many were (0 when python3 is missing there).
 */
export async function endStaleSession(client: Client, where: string, peer: StalePeer): Promise<number> {
  if (isIP(peer.address) === 0 || !Number.isInteger(peer.port) || peer.port <= 0 || peer.port > 65_535)
    return 0
  const command = await execOnClient(
    client,
    `exec python3 - ${shellQuote(peer.address)} ${String(peer.port)}`,
    where,
  )
  let out = ''
  command.stdout.on('data', (d: Buffer) => (out += d.toString()))
  command.stderr.resume()
  command.stdin.end(REAP_SOURCE)
  await command.exited
  const ended = Number(out.trim().split('\n').at(-1))
  return Number.isInteger(ended) ? ended : 0
}
