"""The image service: content-addressed image files on each node, format detection, the
native copy-and-checksum module (`copier`) and its pure-Python twin. Knows files, not
Raft: the API and the image agent record what happens here in the replicated store.
"""
