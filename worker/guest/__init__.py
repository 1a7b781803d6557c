"""The guest runtime: programs and integration services inside a child partition (`vmmem`)."""
