"""`roomcast bench`: load scenarios against a running roomcast on this machine.

Clients are picows connections (install with `pip install 'roomcast[bench]'`), imported
only when a scenario runs; every scenario reads the server's CPU time and memory from
/proc, so it runs on the server's machine against a loopback URL. The bare servers that
`--baseline` compares with are `bench/servers.py` in a checkout, not part of the package.
See docs/performance.md.
"""
