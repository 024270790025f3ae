"""llmds_torch.models"""
