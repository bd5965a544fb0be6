Heavy rain flooded streets in Oakridge on Wednesday.

Emergency crews rescued 21 people from their cars.

Fire chief Anna Price asked drivers to stay at home.

Forecasters expect more storms later this week.

Schools in the area will stay closed until the water goes down.

@highlight

Heavy rain floods streets in Oakridge

@highlight

Crews rescue 21 people from their cars

