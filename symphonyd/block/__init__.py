"""The block service: volume drivers (one module per backend behind `driver.BlockDriver`)
and, on each node, the agent that converges volumes with the store. Drivers get and
return plain values; they never import the store, Raft or the API."""
