"""The command line: thin click commands over `symphonyd.client`."""
