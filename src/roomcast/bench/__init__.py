"""`roomcast bench`: load scenarios against a running roomcast on this machine.

Clients are picows connections (install with `pip install 'roomcast[bench]'`); every
scenario reads the server's CPU time and memory from /proc, so it runs on the server's
machine against a loopback URL. See docs/performance.md.
"""
