"""vmwp, the guest runtime and VMBus (layer above hypervisor/)"""
