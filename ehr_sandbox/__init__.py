"""ehr_sandbox package."""
