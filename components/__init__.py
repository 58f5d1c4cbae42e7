"""Building blocks of the stage-1 scripts (Rainbow training and scripted rollouts).

- masking:     the valid-action mask read straight off the environment's picture;
- networks:    the Rainbow Q-network that masks invalid actions;
- agent:       Dopamine's JAX Rainbow agent with masked exploration;
- runner:      the Dopamine-facing view of BinPackingEnv-v0 and the runner glue;
- rollouts:    batched rollouts of vectorised policies (scripted or the agent's greedy
               policy), with optional recording.
"""
