"""Heavy file and pipe I/O, no sockets: the agent must report nothing of it.
Prints its pid first, then 'done' when finished."""
import os
import sys
import tempfile

print(os.getpid(), flush=True)
block = b"x" * 4096
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "data")
    with open(path, "wb") as f:
        for _ in range(5000):
            f.write(block)
            f.flush()
    with open(path, "rb") as f:
        while f.read(4096):
            pass
r, w = os.pipe()
for _ in range(20000):
    os.write(w, block[:512])
    os.read(r, 512)
print("done", flush=True)
