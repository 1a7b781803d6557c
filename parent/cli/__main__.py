from parent.cli.launch import main

main()
