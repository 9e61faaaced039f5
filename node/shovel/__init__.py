"""Dynamic shovels' runner (node/shovel/runner.py): the replicated definitions
(cluster/machine/shovels.py) carried out by the Raft leader."""
