"""The cross-lab evaluation: the protocol on feature arrays (`protocol`, `domain_maps`), its scores
and 95 % intervals (`metrics`), paired differences and their verdicts (`compare`), the report
(`report`, `figures`) and the driver of `dorl evaluate` (`run`)."""
