from parent.cli.main import main

main()
