"""llmds_torch.kv"""
