"""What a delivery attempt means for its row: judge the replies once, and the retry policy."""
