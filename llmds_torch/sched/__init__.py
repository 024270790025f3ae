"""llmds_torch.sched"""
