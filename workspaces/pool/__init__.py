"""The warm pool: placement and capacity (`placement`), starting and releasing containers (`provisioning`),
refilling the pool (`refill`) and the claim statement (`claim`); the names other code calls are re-exported here."""
from workspaces.pool.claim import container_claim, container_claim_for_session, single_statement_claims
from workspaces.pool.placement import (
                                       ColdOpenLine,
                                       NoCapacity,
                                       PoolBusy,
                                       node_ensure_default,
                                       placement_candidates,
                                       provision_slot_release,
                                       provision_slot_try,
                                       provision_slot_wait,
                                       usable_nodes,
)
from workspaces.pool.provisioning import (
                                       NodeUnavailable,
                                       ProvisionFailed,
                                       container_provision,
                                       container_release,
)
from workspaces.pool.refill import pool_fill, pool_fill_enqueue

__all__ = [
    "ColdOpenLine", "NoCapacity", "NodeUnavailable", "PoolBusy", "ProvisionFailed", "container_claim",
    "container_claim_for_session", "container_provision", "container_release", "node_ensure_default",
    "placement_candidates", "pool_fill", "pool_fill_enqueue", "provision_slot_release", "provision_slot_try",
    "provision_slot_wait", "single_statement_claims", "usable_nodes",
]
