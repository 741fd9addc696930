"""The dashboard: leaderboard, feedback, battles and dataset sizes, per user or for everyone."""
