// Build-only module: the sandbox ("pause") process of the test cluster's pods, our own.
module smtp-relay-operator/test/harness/cluster/pause

go 1.26.0
