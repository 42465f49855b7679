"""Operations: health."""
