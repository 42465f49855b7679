"""Operations: health and reset."""
