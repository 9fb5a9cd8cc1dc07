"""Stand-ins for what this machine lacks: tiny models built here, the paper's models rehearsed on a CPU."""
