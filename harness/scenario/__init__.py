"""Scenario: scenario files, the step-kind registry, the cma_test driver client and the runner loop."""
