"""`python -m parent.web --home H [--port N]`: the hvweb process (what `hvctl web` starts)."""
from parent.web.server import main

main()
