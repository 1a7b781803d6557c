"""`hvctl`: Hyper-V's cmdlets in kebab-case (CLI.md). Each command's docstring is its help."""
