"""Operations: plan against observed state, then apply through the vault/ and store/ gateways."""
