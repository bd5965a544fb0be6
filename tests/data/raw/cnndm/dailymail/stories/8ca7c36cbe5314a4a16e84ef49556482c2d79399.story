Heavy rain flooded streets in Cedar Falls on Monday.

Emergency crews rescued 6 people from their cars.

Fire chief Sara Chen asked drivers to stay at home.

Forecasters expect more storms later this week.

Schools in the area will stay closed until the water goes down.

@highlight

Heavy rain floods streets in Cedar Falls

@highlight

Crews rescue 6 people from their cars

