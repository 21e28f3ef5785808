"""The operator: pure decisions (scheduling, lifecycle, pods, autoscaling) and the loop that applies them."""
