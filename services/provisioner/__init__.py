"""The provisioner: creates engines up to the pool's needs, adopts existing ones, reports deaths."""
