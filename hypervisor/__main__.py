from hypervisor.daemon import main

main()
