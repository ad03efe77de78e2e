/**
 * Python run on an engine or kernel that publishes, on its own iopub socket, one message signed with the
 * wrong key and one unsigned, both claiming to answer the running request — what a process without the
 * key could inject — then prints "real".
 */
export const FORGE_ON_IOPUB = `
from jupyter_client.session import Session
k = get_ipython().kernel
p = k.get_parent("shell")
Session(key=b"not-the-key").send(k.iopub_socket, "stream", {"name": "stdout", "text": "forged\\n"}, parent=p)
Session(key=b"").send(k.iopub_socket, "stream", {"name": "stdout", "text": "unsigned\\n"}, parent=p)
k.iopub_socket.flush() if hasattr(k.iopub_socket, "flush") else None
print("real")
`
