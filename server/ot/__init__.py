"""The OT math: log-domain Sinkhorn, soft c-transform and calibrated gradients. Pure torch; no I/O."""
