"""Loss functions shared by the stages."""
