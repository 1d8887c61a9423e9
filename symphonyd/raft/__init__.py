"""pysyncobj integration: the Raft node, typed log entries, the FSM, the durable journal,
membership and join tokens. Knows the store; never the API or the CLI.
"""
