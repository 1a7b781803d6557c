"""Misbehaving hvemu drivers for scripts/experiment: `faulty.py` (a faulty update), `snoop.py`
(reads other guests' RAM if it can), `attack.py` (changes the hypervisor's ledgers if it can).
`serving.py` is what they share: they serve a `device-stream` guest like the echo driver.
Each reports only what it actually did; nothing here knows which driver model it runs under."""
