"""the parent partition: vmms, client library, hvctl, driver hosts and drivers"""
