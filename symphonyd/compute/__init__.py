"""Compute: virtual machine instances on libvirt, booted from images on volumes."""
