"""llmds_torch.retrieval"""
