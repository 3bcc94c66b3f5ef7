"""The paper's cross-domain evaluation: the protocol on feature arrays (`protocol`, `domain_maps`),
its scores (`metrics`), its report (`report`) and the driver of `dorl evaluate` (`run`)."""
