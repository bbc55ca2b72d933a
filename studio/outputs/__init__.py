"""What a render leaves on disk: the MP4, its JSON record and the start image."""
