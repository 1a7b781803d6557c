"""The web manager (`hvctl web`): Hyper-V Manager for hvemu in a browser.

`server.py` is the `hvweb <home>` process (HTTP on 127.0.0.1, stdlib `ThreadingHTTPServer`);
`feed.py` polls vmms once a second and follows its event stream (the web process is a client
like hvctl and never blocks vmms); `metrics.py` renders `/metrics` for Prometheus;
`page.html` is the single page (no build step: plain HTML, CSS and JS, charts drawn on canvas);
`web_control.py` starts and stops the process for `hvctl web`.
"""
